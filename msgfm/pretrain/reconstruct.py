"""Full-image reconstructions for figures: what the pretrained model makes of masked inputs.

Training decodes only the tokens that carry loss; a figure needs every pixel, so this runs
the decoder on the whole final feature map. For a paired source it shows both the
self-reconstruction (D_i) and the cross-sensor one (D_j from sensor i's input), paper Fig. 3.
"""

from __future__ import annotations

import torch

from msgfm.data.loader import MultiSourceDataset
from msgfm.data.normalize import normalize
from msgfm.model.masking import MaskGenerator, pixel_mask
from msgfm.pretrain.batches import sensor_roles
from msgfm.pretrain.figures import ReconstructionExample
from msgfm.train.checkpoint import unwrap


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module, image: torch.Tensor, sensor: str, target_sensor: str, mask: torch.Tensor
) -> torch.Tensor:
    """Decode the masked ``image`` of ``sensor`` through ``target_sensor``'s decoder, back in
    the data's units (the decoders predict standardised pixels)."""
    bare = unwrap(model)
    tokens = bare.embed(image, sensor, mask)
    features = bare.encoder.forward_features(tokens)
    return bare.embeds[target_sensor].unstandardize(bare.decoders[target_sensor](features))


def reconstruction_examples(
    model: torch.nn.Module,
    dataset: MultiSourceDataset,
    mask_generator: MaskGenerator,
    generator: torch.Generator,
    count: int = 2,
) -> dict[str, list[ReconstructionExample]]:
    """Up to ``count`` examples per (source, sensor), self and cross, on the model's device."""
    bare = unwrap(model)
    device = next(bare.parameters()).device
    was_training = bare.training
    bare.eval()
    out: dict[str, list[ReconstructionExample]] = {}
    try:
        for source, size in dataset.sizes.items():
            rows = [dataset[(source, row, 0)][1] for row in range(min(count, size))]
            sensors = sensor_roles(list(rows[0]))
            stacked = {
                s: normalize(s, torch.stack([r[s] for r in rows]).to(device)) for s in sensors
            }
            for sensor in sensors:
                image = stacked[sensor]
                mask = mask_generator.batch(len(rows), generator).to(device)
                mask_px = pixel_mask(mask, image.shape[-1] // mask.shape[-1])[:, 0]
                examples = []
                for target_sensor in [sensor, *(s for s in sensors if s != sensor)]:
                    target = stacked[target_sensor]
                    recon = reconstruct(bare, image, sensor, target_sensor, mask)
                    examples.extend(
                        ReconstructionExample(
                            sensor=sensor,
                            target_sensor=target_sensor,
                            image=image[i].float().cpu().numpy(),
                            mask=mask_px[i].cpu().numpy(),
                            reconstruction=recon[i].float().cpu().numpy(),
                            target=target[i].float().cpu().numpy(),
                        )
                        for i in range(len(rows))
                    )
                out[f"{source}/{sensor}"] = examples
    finally:
        bare.train(was_training)
    return out
