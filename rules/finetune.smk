# Finetuning stage: shard sets + pretrained encoders -> one metrics.json per table cell
# (task x training fraction x init x transfer method x seed; paper Tables 3, 5, 6).


# Seconds of CPU (an index list): run beside Snakemake rather than queued on a cluster.
localrules:
    finetune_subset,


rule finetune_subset:
    input:
        SHARDS / "downstream" / "{task}",
    output:
        FINETUNE / "subsets" / "{task}" / "frac{fraction}_seed{seed}.txt",
    log:
        LOGS / "finetune" / "subsets" / "{task}_frac{fraction}_seed{seed}.log",
    wildcard_constraints:
        fraction=r"0\.[0-9]+(e-?[0-9]+)?|[0-9]e-[0-9]+",
        seed=r"\d+",
    conda:
        "../envs/pretrain.yaml"
    resources:
        runtime=config["resources"]["tiling_runtime"],
        mem_mb=config["resources"]["tiling_mem_mb"],
    shell:
        "python -m msgfm finetune-subset --shards {input:q} --out {output:q}"
        " --fraction {wildcards.fraction} --seed {wildcards.seed} > {log:q} 2>&1"


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        FINETUNE / "{task}/{init}/{transfer}/frac{fraction}/seed{seed}/metrics.json",
    log:
        LOGS / "finetune" / "{task}" / "{init}_{transfer}_frac{fraction}_seed{seed}.log",
    benchmark:
        BENCHMARKS
        / "finetune"
        / "{task}/{init}_{transfer}_frac{fraction}_seed{seed}.tsv"
    wildcard_constraints:
        init="|".join([*VARIANTS, *BASELINE_INITS]),
        transfer="stacked|shared",
        fraction=r"[0-9.e-]+",
        seed=r"\d+",
    conda:
        TRAIN_ENV
    threads: config["finetune"]["threads"]
    resources:
        # One node (msgfm.train.launch, as rules/pretrain.smk).
        gpus_per_node=config["finetune"]["gpus"],
        gpu=FINETUNE_GPUS["gpu"],
        gres=FINETUNE_GPUS["gres"],
        runtime=config["resources"]["finetune_runtime"],
        mem_mb=config["resources"]["finetune_mem_mb"],
        signal_lead=120,
        requeues=config["resources"]["requeue_spare"],
    params:
        config=finetune_job_config,
        out=lambda wildcards, output: Path(output[0]).parent,
    # exec: the launcher must be the process that SLURM's warning signal reaches, not a shell.
    shell:
        "exec python -m msgfm launch --gpus-per-node {resources.gpus_per_node}"
        " --grace {resources.signal_lead} --requeues {resources.requeues} -- --threads {threads}"
        " finetune --config-json {params.config:q} --out {params.out:q} > {log:q} 2>&1"


# A cell fed a subset of the task's sensors (config finetune.grids.<grid>.sensors; paper Fig. 4):
# the same job, told which by the {sensors} wildcard (finetune_job_config).
use rule finetune as finetune_sensor_subset with:
    output:
        FINETUNE_SENSORS
        / "{sensors}/{task}/{init}/{transfer}/frac{fraction}/seed{seed}/metrics.json",
    log:
        LOGS
        / "finetune_sensors"
        / "{sensors}"
        / "{task}"
        / "{init}_{transfer}_frac{fraction}_seed{seed}.log",
    benchmark:
        BENCHMARKS
        / "finetune_sensors"
        / "{sensors}"
        / "{task}"
        / "{init}_{transfer}_frac{fraction}_seed{seed}.tsv"
    wildcard_constraints:
        sensors=r"[a-z0-9]+(\+[a-z0-9]+)*",
        init="|".join([*VARIANTS, *BASELINE_INITS]),
        transfer="stacked|shared",
        fraction=r"[0-9.e-]+",
        seed=r"\d+",
