"""Print a summary of a reference data directory, loading every file with weights_only=True.

Runs in OUR environment (needs only torch):

    python tests/reference/summarize.py .cache/reference/data
"""

import json
import sys
import time
from pathlib import Path

import torch


def describe(value, depth=0):
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).replace('torch.', '')}{list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v, depth + 1) for v in value) + "]"
    return repr(value)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    t_all = time.time()
    total_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    t0 = time.time()
    zoo = torch.load(root / "zoo.pt", weights_only=True)
    print(f"zoo.pt: {len(zoo)} constructors (loaded in {time.time() - t0:.2f}s)")
    for name, entry in zoo.items():
        print(f"  {name:28s} {entry['class']:24s} {entry['num_params']:>12,d} params  "
              f"{len(entry['keys']):4d} tensors  default={entry['default']}")

    for path in sorted(root.glob("case_*.pt")):
        t0 = time.time()
        case = torch.load(path, weights_only=True)
        dt = time.time() - t0
        n_params = sum(v.numel() for v in case["state_dict"].values())
        print(f"\n{path.name}  ({path.stat().st_size / 2**20:.1f} MiB, loaded in {dt:.2f}s)")
        print(f"  class={case['class']} constructor={case['constructor']} kwargs={case['kwargs']}")
        print(f"  state_dict: {len(case['state_dict'])} tensors, {n_params:,d} params")
        for group in ("inputs", "outputs"):
            for key, value in case[group].items():
                print(f"  {group[:-1]:6s} {key:22s} {describe(value)}")

    for result in sorted(root.glob("hub_official/*/result.json")):
        ref = torch.load(result.parent / "reference.pt", weights_only=True)
        info = json.loads(result.read_text())
        print(f"\nhub_official/{result.parent.name}: files={info['files']} "
              f"save_with_config ok={info['save_with_config']['ok']} "
              f"official from_pretrained ok={info['official_from_pretrained']['ok']} "
              f"reference outputs={ {k: describe(v) for k, v in ref['outputs'].items()} }")
        if not info["save_with_config"]["ok"]:
            print(f"  save_pretrained(dir, config=model.config) raised "
                  f"{info['save_with_config']['exception_type']}: {info['save_with_config']['exception']}")

    print(f"\ntotal size {total_bytes / 2**20:.1f} MiB; everything loaded in {time.time() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
