"""A finished job as a Croissant 1.1 description (JSON-LD): every shard with its sha256, the record fields, the
class names, and the provenance (PROV-O, as the 1.1 specification recommends) with the full generation plan."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from service.datasets.shards import EXTENSIONS, shard_name
from service.datasets.store import Job, Shard

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "prov": "http://www.w3.org/ns/prov#",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
    # The generation plan, kept whole as a JSON literal on the generating activity.
    "generation": {"@id": "urn:gan-serving:generation", "@type": "@json"},
}
FILES = {  # per format: the files inside (or the shards themselves), and how a field is read from them
    "webdataset": ("application/x-tar", "sample-files", "image/png", "*.png"),
    "parquet": ("application/x-parquet", "parquet-files", "application/x-parquet", "*.parquet"),
    "npz": ("application/zip", "npz-arrays", "application/x-npy", "*.npy"),
}


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def describe(
    job: Job, shards: list[Shard], url: str, software: str, shard_url: Callable[[int], str] | None = None
) -> dict[str, Any]:
    """The Croissant JSON-LD of `job` (done), found at `url`; shard k is at `shard_url(k)` (default:
    `url`/shards/k, as the service serves it)."""
    spec, info = job.spec, job.info
    fmt = spec["format"]
    name = f"{job.model}-v{job.version}-seed{spec['seed']}-{job.id}"
    locate = shard_url or (lambda k: f"{url}/shards/{k}")
    distribution: list[dict[str, Any]] = [file_object(job, s, locate(s.k)) for s in shards]
    _, fileset, inner, includes = FILES[fmt]
    distribution.append({
        "@type": "cr:FileSet", "@id": fileset, "name": fileset,
        "description": f"every {includes} of the {len(shards)} shards",
        "containedIn": [{"@id": shard_name(s.k, fmt)} for s in shards],
        "encodingFormat": inner, "includes": includes,
    })  # fmt: skip
    record_sets = [samples(job, fmt, fileset)]
    if info["class_names"]:
        record_sets.append(classes(info["class_names"]))
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": (
            f"{job.total_rows} synthetic samples of {job.model} version {job.version} (ONNX sha256 "
            f"{job.onnx_sha256}), seed {spec['seed']}, in {job.shards} {fmt} shards of {spec['shard_rows']} rows. "
            "Row j has latent (seed, j) and the class the plan puts at j: the rows /augment serves for this plan."
        ),
        "url": url,
        "version": "1.0.0",
        "datePublished": iso(job.finished_at),
        "isLiveDataset": False,
        "keywords": ["synthetic data", "generative adversarial network", job.model],
        "distribution": distribution,
        "recordSet": record_sets,
        "prov:wasDerivedFrom": {"@id": f"urn:sha256:{job.onnx_sha256}"},
        "prov:wasGeneratedBy": activity(job, shards, software),
    }


def file_object(job: Job, shard: Shard, content_url: str) -> dict[str, Any]:
    fmt = job.spec["format"]
    return {
        "@type": "cr:FileObject",
        "@id": shard_name(shard.k, fmt),
        "name": shard_name(shard.k, fmt),
        "description": f"shard {shard.k}: rows {shard.start} to {shard.stop - 1} (indices [{shard.start}, {shard.stop}))",
        "contentUrl": content_url,
        "contentSize": f"{shard.bytes} B",
        "encodingFormat": FILES[fmt][0],
        "sha256": shard.sha256,
    }


def field(
    record: str, name: str, data_type: str | list[str], source: dict[str, Any], **more: Any
) -> dict[str, Any]:
    return {
        "@type": "cr:Field",
        "@id": f"{record}/{name}",
        "name": name,
        "dataType": data_type,
        "source": source,
    } | more


def samples(job: Job, fmt: str, fileset: str) -> dict[str, Any]:
    """The records: one per sample, with its image (or vector), label, seed and index."""
    info, record = job.info, "samples"
    conditional, image = bool(info["class_names"]), info["kind"] == "image"

    def column(name: str) -> dict[str, Any]:
        return {"fileSet": {"@id": fileset}, "extract": {"column": name}}

    fields: list[dict[str, Any]]
    if fmt == "webdataset":
        files = {"fileSet": {"@id": fileset}}
        fields = [
            field(record, "key", "sc:Text", files | {"extract": {"fileProperty": "filename"}, "transform": {"regex": r"^([0-9]+)\.png$"}},
                  description="the sample's key in its shard: its index, zero-padded; KEY.cls holds the label, KEY.json index, seed, label, class_name and the model"),
            field(record, "image", "sc:ImageObject", files | {"extract": {"fileProperty": "content"}},
                  description="the PNG"),
        ]  # fmt: skip
        return {
            "@type": "cr:RecordSet",
            "@id": record,
            "name": record,
            "key": {"@id": f"{record}/key"},
            "field": fields,
        }
    shape = ",".join(str(d) for d in info["output_shape"])
    if image:
        if fmt == "npz":
            h_w_c = info["output_shape"][1:] + info["output_shape"][:1]
            value = field(record, "x", "cr:UInt8", column("x"), isArray=True, arrayShape=",".join(map(str, h_w_c)),
                          description="uint8 pixels, H x W x C")  # fmt: skip
        else:
            value = field(record, "image", "sc:ImageObject", column("image"), description="the PNG's bytes")
    else:
        value = field(record, "x", "cr:Float32", column("x"), isArray=True, arrayShape=shape,
                      description="the generator's output vector")  # fmt: skip
    fields = [value]
    if conditional:
        fields.append(field(record, "label", ["sc:Integer", "cr:Label"], column("label" if fmt == "parquet" else "y"),
                            description="the class index: a key of the `classes` record set"))  # fmt: skip
        if fmt == "parquet":
            fields.append(
                field(record, "class_name", "sc:Text", column("class_name"), description="the class name")
            )
    fields.append(field(record, "seed", "sc:Integer", column("seed"), description="the seed of every row"))
    fields.append(
        field(record, "index", "sc:Integer", column("index"), description="j: the latent is (seed, j)")
    )
    return {
        "@type": "cr:RecordSet",
        "@id": record,
        "name": record,
        "key": {"@id": f"{record}/index"},
        "field": fields,
    }


def classes(names: list[str]) -> dict[str, Any]:
    return {
        "@type": "cr:RecordSet",
        "@id": "classes",
        "name": "classes",
        "description": "the model's classes: a sample's label is an index into them",
        "dataType": "sc:Enumeration",
        "key": {"@id": "classes/index"},
        "field": [
            {"@type": "cr:Field", "@id": "classes/index", "name": "index", "dataType": "sc:Integer"},
            {"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text"},
        ],
        "data": [{"classes/index": i, "classes/name": name} for i, name in enumerate(names)],
    }


def activity(job: Job, shards: list[Shard], software: str) -> dict[str, Any]:
    """How the set was made: the graph used (by sha256), the software, and the plan, whole."""
    spec, info = job.spec, job.info
    plan = {
        k: spec[k] for k in ("per_class", "class_counts", "target", "ratio", "n") if spec.get(k) is not None
    }
    return {
        "@type": "prov:Activity",
        "prov:label": f"gan-serving dataset job {job.id}",
        "prov:startedAtTime": iso(job.created_at),
        "prov:endedAtTime": iso(job.finished_at),
        "prov:used": {
            "@id": f"urn:sha256:{job.onnx_sha256}",
            "@type": "prov:Entity",
            "prov:label": f"{job.model} version {job.version}: model.onnx (sha256 {job.onnx_sha256})",
        },
        "prov:wasAssociatedWith": {"@type": "prov:SoftwareAgent", "prov:label": software},
        "generation": {
            "job": job.id,
            "model": job.model,
            "version": job.version,
            "onnx_sha256": job.onnx_sha256,
            "seed": spec["seed"],
            "truncation": spec["truncation"],
            "plan": plan,
            "rows_per_class": info["counts"],
            "class_index_ranges": info["index_ranges"],
            "rule": "row j: latent from Philox keyed by (seed, j), class by the plan's order (service.plans.set_rows)",
            "format": spec["format"],
            "file_extension": EXTENSIONS[spec["format"]],
            "shard_rows": spec["shard_rows"],
            "png_provenance": spec["png_provenance"],
            "shards": [{"k": s.k, "start": s.start, "stop": s.stop, "sha256": s.sha256} for s in shards],
        },
    }
