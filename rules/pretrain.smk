# Pretraining stage: shard sets -> one pretrained msGFM encoder per variant (Tables 3, 5, 6).


rule pretrain:
    input:
        pretrain_shards,
    output:
        PRETRAIN / "{variant}" / "encoder.pt",
    log:
        LOGS / "pretrain" / "{variant}.log",
    benchmark:
        BENCHMARKS / "pretrain" / "{variant}.tsv"
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


rule pretrain_summary:
    input:
        PRETRAIN / "{variant}" / "encoder.pt",
    output:
        report(
            PRETRAIN / "{variant}" / "summary.png",
            caption="../workflow/report/pretrain_summary.rst",
            category="Pretraining",
            subcategory="{variant}",
            labels={"variant": "{variant}", "figure": "curves + reconstructions"},
        ),
    log:
        LOGS / "pretrain" / "{variant}_summary.log",
    conda:
        "../envs/pretrain.yaml"
    resources:
        runtime=10,
        mem_mb=2000,
    params:
        job_dir=lambda wildcards: PRETRAIN / wildcards.variant,
        results_root=RESULTS,
        tracking_uri=(
            f"--tracking-uri {config['tracking_uri']}"
            if config["tracking_uri"]
            else ""
        ),
    shell:
        "python -m msgfm pretrain-summary --job-dir {params.job_dir} --out {output}"
        " --results-root {params.results_root} {params.tracking_uri} > {log} 2>&1"
