"""Everything that spans devices: a run's plan, the Ray driver and workers, sinks, shards and stats.

Stages of `argen generate`, each doing one thing:
    plan.build_plan        config -> shards (conditions, per-sample seeds), a pure function
    sinks.open_sink        output.uri -> LocalSink | S3Sink (whole-object writes), preflight probe
    driver.run             checks, run.json, committed shards, actor pool, retries, manifest, report
    worker.ShardWorker     one generator per actor: generate -> encode PNG/tar (overlapped) -> write -> stats
    shards / stats         WebDataset tar of one shard; stats record (the commit marker), manifest, totals
    quality / metrics / evaluation   per-shard features and the run's FID/IS/precision-recall
"""
