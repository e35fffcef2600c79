"""A typed client for the gan-serving API, for ML pipelines: samples with provenance, synthetic sets paged
or streamed, dataset jobs downloaded and verified; retries that honour the service's Retry-After.

`gan_client.torch_data.AugmentDataset` (a PyTorch IterableDataset) imports torch; nothing else here does.
"""

from gan_client.api import Client, EditOperation, Endpoint, PlanSpec, SetSpec, Variations
from gan_client.datasets import DatasetJob
from gan_client.errors import ApiError, ChecksumError, DatasetFailed, GanError
from gan_client.retry import NO_RETRIES, Retrier, RetryPolicy
from gan_client.samples import ModelInfo, ModelVersion, Samples

__all__ = [
    "NO_RETRIES",
    "ApiError",
    "ChecksumError",
    "Client",
    "DatasetFailed",
    "DatasetJob",
    "EditOperation",
    "Endpoint",
    "GanError",
    "ModelInfo",
    "ModelVersion",
    "PlanSpec",
    "Retrier",
    "RetryPolicy",
    "Samples",
    "SetSpec",
    "Variations",
]
