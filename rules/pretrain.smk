# Pretraining stage: shard sets -> one pretrained msGFM encoder per variant (Tables 3, 5, 6).


onstart:
    # Create the MLflow store and experiments once, before jobs fan out: concurrent jobs
    # creating a fresh SQLite schema or the same experiment race (SPEC §8).
    shell(
        f"python -m msgfm init-tracking --results-root {RESULTS}"
        f" --experiments {' '.join(EXPERIMENTS)}"
        + (
            f" --tracking-uri {config['tracking_uri']}"
            if config["tracking_uri"]
            else ""
        )
    )


rule pretrain:
    input:
        pretrain_shards,
    output:
        PRETRAIN / "{variant}" / "encoder.pt",
    log:
        LOGS / "pretrain" / "{variant}.log",
    conda:
        "../envs/pretrain.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
        runtime=config["resources"]["pretrain_runtime"],
        mem_mb=config["resources"]["pretrain_mem_mb"],
    params:
        config=pretrain_job_config,
        out=lambda wildcards: PRETRAIN / wildcards.variant,
        # From the job's resources, so a profile's GPU count (--profile slurm) is also
        # torchrun's process count.
        launch=lambda wildcards, resources: launcher(resources.gpu),
    # exec: SLURM's warning TERM reaches every process of the job step; a shell in between
    # would die of it at once instead of waiting for the checkpoint.
    shell:
        "exec {params.launch} --threads {threads} pretrain --config-json {params.config:q}"
        " --out {params.out} > {log} 2>&1"
