"""Runs ModelOpt's INT8 / FP8 quantizer in its own process.

ModelOpt patches onnxruntime.quantization's classes in place when it quantizes (ort_patching in
0.47), after which ONNX Runtime's own quantizer fails in the same process. A child process keeps
the parent's onnxruntime untouched. Usage: python -m clipexport.precision._modelopt_worker JOB.json
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(job_path: str) -> None:
    job = json.loads(open(job_path, encoding="utf-8").read())
    from modelopt.onnx.quantization import quantize

    from clipexport.precision._quiet import quiet_libraries

    with quiet_libraries():
        quantize(
            job["fp32"],
            quantize_mode=job.get("mode", "int8"),
            calibration_data={job["input_name"]: np.load(job["data"])},
            calibration_method=job["method"],
            calibration_shapes=job["shapes"],
            calibration_eps=job["eps"],
            nodes_to_exclude=job["exclude"],
            op_types_to_exclude=job.get("exclude_ops") or None,
            high_precision_dtype="fp16",  # what TensorRT runs the unquantized layers in
            output_path=job["out"],
            log_level="ERROR",
        )


if __name__ == "__main__":
    main(sys.argv[1])
