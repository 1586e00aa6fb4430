"""Input data: grain sources and transforms, the pipeline, the procedural dataset, and ``prepare``.

    sources      ManifestSource (CSV / JSONL / JSON manifests), TFDSSource, ArrayRecordSource
    transforms   record -> example (crop, resample, normalise, log-mel, fbank, caption) or a skip marker
    pipeline     DataConfig, make_dataset (per-host, checkpointable batch iterator), global_batch
    procedural   the built-in captioned synthetic dataset and its attribute checks
    prepare      python -m audioldm2_jax.data.prepare --manifest m.csv --out dir --shards N
    testing      small good-and-bad audio corpora for tests and benchmarks

Nothing is imported here, so that importing one of them does not pull the others' dependencies.
"""
