# Tables stage: every finetuning cell -> the paper's Tables 3, 5 and 6 beside its numbers.


# Minutes of CPU: run beside Snakemake rather than queued on a cluster.
localrules:
    tables,


rule tables:
    input:
        table_targets(),
    output:
        [
            report(
                TABLES / f"{name}.{ext}",
                caption="../workflow/report/tables.rst",
                category="Tables",
                labels={"table": name, "format": ext},
            )
            for name in TABLE_NAMES
            for ext in ("csv", "md", "png")
        ],
        [
            TABLES / f"{name}{suffix}"
            for name in TABLE_NAMES
            for suffix in (".tex", "_paired.csv")
        ],
    log:
        LOGS / "tables.log",
    conda:
        "../envs/tables.yaml"
    resources:
        runtime=10,
        mem_mb=2000,
    params:
        finetune_root=FINETUNE,
        pretrain_root=PRETRAIN,
        out=TABLES,
        transfer=config["tables"]["transfer"],
        results_root=RESULTS,
    # Also logged to MLflow (the store in MLFLOW_TRACKING_URI, rules/common.smk): a "tables"
    # run per table, and tags on the runs behind each row.
    shell:
        "python -m msgfm tables --finetune-root {params.finetune_root:q} --out {params.out:q}"
        " --pretrain-root {params.pretrain_root:q} --transfer {params.transfer:q}"
        " --results-root {params.results_root:q} {input:q} > {log:q} 2>&1"
