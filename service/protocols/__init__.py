"""Standard inference protocols beside the native API: the Open Inference Protocol (KServe v2) over HTTP."""
