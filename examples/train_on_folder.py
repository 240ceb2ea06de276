"""Train GALD on your own folder of images and masks with the Keras API (`model.fit`).

    python examples/train_on_folder.py my_data [--steps 300] [--out runs/folder_example]

`my_data` holds `images/` + `labels/` (20 % of the images become the validation split) or
`train/` + `val/` sub-folders, and `classes.txt` (one class name a line; `name r g b` for
RGB-coded masks): see `keras_gald.data.load_folder`. Writes `OUT/model.keras` and
`OUT/model.onnx`. The CLI equivalent: `keras-gald train --dataset folder --data-dir my_data`.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(root, steps=300, out="runs/folder_example", batch_size=4):
    import keras
    import tensorflow as tf

    from keras_gald import data, export, losses, metrics
    from keras_gald.models import GALD

    root, out = pathlib.Path(root), pathlib.Path(out)
    ds = data.load_folder(root, val_fraction=None if (root / "train").is_dir() else 0.2)
    summary = data.summarize(ds)
    print(summary.text())
    sizes = data.suggest_training_sizes(summary.image_sizes)  # small crops for a CPU
    train = data.make_dataset(ds.splits["train"], crop_size=sizes["crop_size"], seed=0,
                              scale_range=sizes["scale_range"], scale_step=None,
                              batch_size=batch_size, cache=True, repeat=True)

    def rescale(image, mask):  # evaluate at the training scale
        hw = tf.cast(tf.round(tf.cast(tf.shape(image)[1:3], tf.float32) * sizes["eval_scale"]), tf.int32)
        return tf.image.resize(image, hw), tf.image.resize(mask[..., None], hw, "nearest")[..., 0]

    val = data.make_eval_dataset(ds.splits["val"]).map(rescale)
    n = ds.info.num_classes
    model = GALD("resnet_tiny", num_classes=n, head_channels=32, aspp_filters=16)
    model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9),
                  loss=losses.SegmentationCrossEntropy(), aux_loss="auto",
                  metrics=[metrics.MeanIoU(n, name="mean_iou")])
    model.fit(train, steps_per_epoch=steps, epochs=1)
    print("validation:", model.evaluate(val, return_dict=True))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    export.to_onnx(model, out / "model.onnx")
    print(f"wrote {out / 'model.keras'} and {out / 'model.onnx'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="runs/folder_example")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    main(args.data_dir, args.steps, args.out, args.batch_size)
