/work/main/target/debug/deps/otel_config-ef9801a444434c14.d: otel-config/src/lib.rs otel-config/src/env.rs otel-config/src/file.rs

/work/main/target/debug/deps/libotel_config-ef9801a444434c14.rlib: otel-config/src/lib.rs otel-config/src/env.rs otel-config/src/file.rs

/work/main/target/debug/deps/libotel_config-ef9801a444434c14.rmeta: otel-config/src/lib.rs otel-config/src/env.rs otel-config/src/file.rs

otel-config/src/lib.rs:
otel-config/src/env.rs:
otel-config/src/file.rs:
