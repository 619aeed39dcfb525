# Tables stage: every finetuning cell -> the paper's Tables 3, 5 and 6 beside its numbers.


rule tables:
    input:
        finetune_targets(),
    output:
        [
            TABLES / f"{name}.{ext}"
            for name in TABLE_NAMES
            for ext in ("csv", "md", "tex")
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
        out=TABLES,
        transfer=config["tables"]["transfer"],
    shell:
        "python -m msgfm tables --finetune-root {params.finetune_root} --out {params.out}"
        " --transfer {params.transfer} {input} > {log} 2>&1"
