"""README's plugin example, run verbatim: a user module outside the package, used via --import."""
import re
from pathlib import Path

import torch

from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent


def _readme_block(first_line: str) -> str:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    matches = [b for b in blocks if b.startswith(first_line)]
    assert len(matches) == 1, f"README must have one code block starting with {first_line!r}"
    return matches[0]


def test_readme_encoder_plugin_runs_through_the_runner(tmp_path, monkeypatch):
    (tmp_path / "my_encoders.py").write_text(_readme_block("# my_encoders.py"))
    (tmp_path / "my_stats.gin").write_text(_readme_block("# my_stats.gin"))
    command = _readme_block("python tools/run.py --import my_encoders").split()
    assert command[2:] == ["--import", "my_encoders", "--gin", "my_stats.gin"]
    monkeypatch.chdir(tmp_path)
    rc = main(command[2:] + ["--gin_param", "embedded.size = 24", "--gin_param", "latent_stats.batch_size = 7",
                             "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"])
    assert rc == 0
    stats_file = next((tmp_path / "runs" / "my_stats").glob("*/stat.pt"))
    stats = torch.load(stats_file, weights_only=True)
    assert stats["mean"].shape == (192, 8, 8) and stats["var"].shape == (192, 8, 8)  # per position, as RAE's

    # the same statistics computed directly, in float64, from the plugin and the dataset
    import my_encoders  # noqa: E402  (importable: the runner put the working folder on sys.path)
    from rae.data.embedded import EmbeddedDataset

    encoder = my_encoders.PixelPatches(patch_size=8, input_size=64)
    dataset = EmbeddedDataset(size=24, resolution=64)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    latents = encoder(images).double().transpose(1, 2).reshape(-1, 192, 8, 8)
    torch.testing.assert_close(stats["mean"].double(), latents.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats["var"].double(), latents.var(0, unbiased=False), atol=1e-6, rtol=1e-5)
