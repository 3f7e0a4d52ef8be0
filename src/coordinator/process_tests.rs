//! A coordinator "process" for restart tests: its own tokio runtime, so a
//! kill ends every task it started at once, mid-request, like `kill -9`.
//! A request it had sent that the API server had not yet applied (e.g.
//! parked by [`crate::testkit::apiserver::Hold`]) is never applied.

use std::future::Future;
use std::time::Duration;

pub(crate) struct Process {
    rt: Option<tokio::runtime::Runtime>,
}

impl Process {
    /// Runs what `start` returns on a fresh runtime; `start` runs there
    /// too, so API clients it makes serve their requests there.
    pub(crate) fn start<F>(start: impl FnOnce() -> F + Send + 'static) -> Process
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.spawn(async move { start().await });
        Process { rt: Some(rt) }
    }

    /// Ends every task of the process and waits until they are gone.
    pub(crate) async fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5)))
                .await
                .expect("runtime shut down");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
