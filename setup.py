"""keras_gald: GALD scene parsing (Global Aggregation then Local Distribution) in Keras 3."""

from setuptools import find_packages, setup

TF_CPU = "tensorflow-cpu==2.21.*"
JAX_CPU = "jax[cpu]==0.10.2"

setup(
    name="keras_gald",
    version="0.1.0",
    description="GALD scene-parsing networks (GA heads + LDv1/LDv2) for Keras 3 (TensorFlow, JAX)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_gald", "keras_gald.*", "training", "training.*"]),
    install_requires=[
        TF_CPU,
        "keras==3.15.*",
        "numpy>=1.26",
        "pillow>=10",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # The README's test command runs the suite on two workers (`-n 2`).
            "pytest-xdist>=3.5",
            "tf2onnx==1.17.*",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "tensorflow-datasets==4.9.10",
            "importlib_resources",
            # Runs exported .tflite files (tf.lite.Interpreter is deprecated).
            "ai-edge-litert>=2.0",
            # The JAX pass (`KERAS_BACKEND=jax pytest -m jax`); installs beside TF 2.21 and
            # Keras 3.15 (`pip check` clean with tensorflow-cpu 2.21.0, jax/jaxlib 0.10.2).
            JAX_CPU,
        ],
        # Run the models on the JAX backend (`KERAS_BACKEND=jax`); TensorFlow stays installed
        # for the data pipelines, export and conversion.
        "jax": [JAX_CPU],
        "onnx": ["tf2onnx==1.17.*", "onnx>=1.16", "onnxruntime>=1.18"],
        "tfds": ["tensorflow-datasets==4.9.10", "importlib_resources"],
        # On a GPU machine install with `pip install -e .[gpu] --no-deps`-free route:
        # tensorflow[and-cuda] provides the same `tensorflow` module as tensorflow-cpu.
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["keras-gald=training.cli:main"]},
)
