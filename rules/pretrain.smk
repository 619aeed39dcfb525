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
        TRAIN_ENV
    threads: config["pretrain"]["threads"]
    resources:
        # One SLURM task per node holding the node's GPUs (the slurm profile adds
        # --ntasks-per-node=1); msgfm.train.launch starts torchrun on each node.
        nodes=config["pretrain"]["nodes"],
        gpus_per_node=config["pretrain"]["gpus_per_node"],
        gpu=PRETRAIN_GPUS["gpu"],
        gres=PRETRAIN_GPUS["gres"],
        runtime=config["resources"]["pretrain_runtime"],
        mem_mb=config["resources"]["pretrain_mem_mb"],
        # Seconds between the warning signal and the kill: the ranks' time to checkpoint (the
        # slurm profile sets it with its --signal lead; locally, Ctrl-C's grace).
        signal_lead=300,
        requeues=pretrain_requeues,
    params:
        config=pretrain_job_config,
        out=lambda wildcards: PRETRAIN / wildcards.variant,
    # exec: the launcher must be the process that SLURM's warning signal reaches, not a shell.
    shell:
        "exec python -m msgfm launch --nodes {resources.nodes}"
        " --gpus-per-node {resources.gpus_per_node} --grace {resources.signal_lead}"
        " --requeues {resources.requeues} -- --threads {threads}"
        " pretrain --config-json {params.config:q} --out {params.out:q} > {log:q} 2>&1"


# Seconds of CPU (curves and a figure): run beside Snakemake rather than queued on a cluster.
localrules:
    pretrain_summary,


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
    shell:
        "python -m msgfm pretrain-summary --job-dir {params.job_dir:q} --out {output:q}"
        " --results-root {params.results_root:q} > {log:q} 2>&1"
