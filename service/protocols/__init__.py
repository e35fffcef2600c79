"""Standard inference protocols beside the native API: the Open Inference Protocol (KServe v2) over HTTP
(`v2`, on the service's port) and over gRPC (`grpc_v2`, on GAN_GRPC_PORT), sharing `v2_tensors` and the plans."""
