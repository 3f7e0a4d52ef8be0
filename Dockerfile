# The prewarm image: one static-ish binary on distroless.
#
#   docker build -t ghcr.io/prewarm/prewarm:0.1.0 .
#
# Base images are pinned by digest (scripts/supply-chain.py checks it), so a
# rebuild uses exactly the toolchain and runtime that were reviewed; the tag
# stays for readers and for tools that propose updates. There is no
# `# syntax=` line: RUN --mount is supported by BuildKit's built-in frontend,
# and a syntax image would be one more unpinned download. To move a pin, look
# the new digest up (`docker buildx imagetools inspect <image:tag>`) and
# review the image's changes before committing it.

FROM rust:1.95.0-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS builder
# protoc for the containerd/CRI gRPC bindings generated at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and incremental artifacts between builds;
# the binary is copied out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin prewarm \
    && cp target/release/prewarm /prewarm

# distroless/cc: glibc (bookworm, matching the builder), libgcc and CA
# certificates, no shell or package manager. The default variant runs as root,
# unlike :nonroot (uid 65532): the node agent needs uid 0 to connect to the
# root-owned containerd socket and read the kubelet's 0600 credential files.
# The DaemonSet still drops every capability and forbids privilege escalation.
FROM gcr.io/distroless/cc-debian12:latest@sha256:e5d81ddde149641e2a9ba55be4545bc125c67de07508b03ba4c22e6eb0ded5aa
LABEL org.opencontainers.image.title="prewarm" \
      org.opencontainers.image.description="Pre-pulls container images into containerd on Kubernetes nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /prewarm /prewarm
USER 0:0
EXPOSE 9464
ENTRYPOINT ["/prewarm"]
