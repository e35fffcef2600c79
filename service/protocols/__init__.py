"""Standard inference protocols beside the native API: the Open Inference Protocol (KServe v2) over HTTP
(`v2`, on the service's port) and over gRPC (`grpc_v2`, on GAN_GRPC_PORT).

Shared by both: `v2_tensors` (tensors as JSON and binary data), `v2_plans` (a request → the plan of its rows),
`v2_metadata` (model resolution, readiness, server and model metadata) and `v2_errors` (failures as the
protocol's problems). gRPC's own: `grpc_v2_messages` (protobuf ↔ those terms), `grpc_v2_calls` (admission,
metrics and statuses around every call) and `grpc_v2_health` (grpc.health.v1)."""
