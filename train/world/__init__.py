"""The shapes world: a small procedural world in which every part of M²Chat can be
trained and measured on a CPU (issue 15). Run as `python -m train.world <subcommand>`.

    vocabulary  the world's attributes (one definition: shapes, colours, sizes, positions)
    scenes      scenes, seeded sampling, edits, the held-out (colour, shape) split
    render      scene -> RGB image, a pure function of the scene
    language    captions, requests, answers, edit instructions, story text
    dataset     writes stage-1 shards and stage-2 dialogue JSONL in train/'s formats
    judge       a CNN that reads a scene back from an image (scores generated images)
    taesd       the world's VAE in ComfyUI's TAESD ("taesdxl") format
    loop        the resumable, atomic training loop both models use
    training    what the loop trains: the judge's and the VAE's batches, losses, evaluations
    measure     the judge and the VAE measured on freshly generated images
    config      the settings of each subcommand, checked before any work
    files       atomic writes
"""
