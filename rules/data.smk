# Data stage: raw archives (or the generated demo data) -> memory-mappable shard sets.


if config["data"]["source"] == "demo":

    rule make_demo_data:
        output:
            [ready_marker(dataset) for dataset in DATASETS],
        log:
            LOGS / "data" / "make_demo_data.log",
        conda:
            "../envs/data.yaml"
        resources:
            runtime=config["resources"]["download_runtime"],
        params:
            data_root=DATA,
            seed=config["data"]["seed"],
            datasets=DATASETS,
        shell:
            "python -m msgfm make-demo --data-root {params.data_root:q} --seed {params.seed}"
            " --datasets {params.datasets:q} > {log:q} 2>&1"

else:

    rule prepare_dataset:
        output:
            ready_marker("{dataset}"),
        log:
            LOGS / "data" / "prepare_{dataset}.log",
        conda:
            "../envs/data.yaml"
        resources:
            runtime=config["resources"]["download_runtime"],
        params:
            data_root=DATA,
            # A list: quoted item by item ({params.mirror:q}), nothing when unset.
            mirror=(
                ["--mirror", config["data"]["mirror"]]
                if config["data"]["mirror"]
                else []
            ),
        shell:
            "python -m msgfm prepare {wildcards.dataset} --data-root {params.data_root:q} {params.mirror:q}"
            " > {log:q} 2>&1"


rule tile_pretrain:
    input:
        ready_marker("{source}"),
    output:
        directory(SHARDS / "pretrain" / "{source}"),
    log:
        LOGS / "data" / "tile_pretrain_{source}.log",
    conda:
        "../envs/data.yaml"
    resources:
        runtime=config["resources"]["tiling_runtime"],
        mem_mb=config["resources"]["tiling_mem_mb"],
    params:
        data_root=DATA,
        tiling=config["tiling"],
        mdas_window=(
            ["--mdas-window", config["tiling"]["mdas_window"]]
            if config["tiling"]["mdas_window"]
            else []
        ),
    shell:
        "python -m msgfm tile-pretrain {wildcards.source} --data-root {params.data_root:q} --out {output:q}"
        " --tile {params.tiling[tile]} --mdas-resize {params.tiling[mdas_resize]}"
        " {params.mdas_window:q} --rows-per-shard {params.tiling[rows_per_shard]} > {log:q} 2>&1"


rule tile_downstream:
    input:
        ready_marker("{task}"),
    output:
        directory(SHARDS / "downstream" / "{task}"),
    log:
        LOGS / "data" / "tile_downstream_{task}.log",
    conda:
        "../envs/data.yaml"
    resources:
        runtime=config["resources"]["tiling_runtime"],
        mem_mb=config["resources"]["tiling_mem_mb"],
    params:
        data_root=DATA,
        rows_per_shard=config["tiling"]["rows_per_shard"],
        options=downstream_tiler_options,
    shell:
        "python -m msgfm tile-downstream {wildcards.task} --data-root {params.data_root:q} --out {output:q}"
        " --options-json {params.options:q} --rows-per-shard {params.rows_per_shard} > {log:q} 2>&1"
