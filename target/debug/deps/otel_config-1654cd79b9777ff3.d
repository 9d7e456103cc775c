/work/main/target/debug/deps/otel_config-1654cd79b9777ff3.d: otel-config/src/lib.rs otel-config/src/env.rs otel-config/src/file.rs otel-config/src/tests.rs

/work/main/target/debug/deps/otel_config-1654cd79b9777ff3: otel-config/src/lib.rs otel-config/src/env.rs otel-config/src/file.rs otel-config/src/tests.rs

otel-config/src/lib.rs:
otel-config/src/env.rs:
otel-config/src/file.rs:
otel-config/src/tests.rs:
