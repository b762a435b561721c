"""Read a FiftyOne dataset back through FiftyOne's own API, in a process of its own
(FiftyOne reads ``FIFTYONE_DATABASE_URI`` once, when it is first imported, so the test
process, which may have imported it already for other tests, cannot point it at the
test's database).

``python tests/export/fiftyone_read.py NAME OUT.pkl`` pickles ``{"persistent", "info",
"mask_targets", "classes", "field_types", "samples": [{filepath, image_id, file_name,
width, height, score, detections: [(label, bounding_box, mask, confidence, area)] or
None, segmentation: (H, W) mask or None, heatmap: (H, W) map, heatmap_range}]}`` and
``{"missing": True}`` when the dataset does not exist.
"""

from __future__ import annotations

import pickle
import sys


def main(name: str, out: str) -> None:
    import fiftyone as fo

    if not fo.dataset_exists(name):
        result = {"missing": True, "datasets": fo.list_datasets()}
    else:
        ds = fo.load_dataset(name)
        schema = ds.get_field_schema()
        samples = []
        for s in ds.iter_samples():
            pre = s["prelabels"]
            dets = seg = None
            if isinstance(pre, fo.Detections):
                dets = [(d.label, list(d.bounding_box), d.mask, d.confidence, d["area"]) for d in pre.detections]
            else:
                seg = pre.get_mask()
            heat = s["confidence"]
            samples.append({
                "filepath": s.filepath, "image_id": s["image_id"], "file_name": s["file_name"],
                "width": s.metadata.width, "height": s.metadata.height, "score": s["score"],
                "detections": dets, "segmentation": seg,
                "heatmap": heat.get_map() if heat is not None else None,
                "heatmap_range": list(heat.range) if heat is not None else None,
            })
        result = {"missing": False, "persistent": ds.persistent, "info": dict(ds.info),
                  "mask_targets": dict(ds.mask_targets), "classes": dict(ds.classes),
                  "field_types": {k: type(v).__name__ + ":" + str(getattr(v, "document_type", ""))
                                  for k, v in schema.items()},
                  "datasets": fo.list_datasets(), "samples": samples}
    with open(out, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
