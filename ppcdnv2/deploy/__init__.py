"""Deployment: export to Paddle Inference / ONNX, predictors for each engine, image classification.

See ``tools/export.py`` and ``tools/infer.py`` for the command lines.
"""
from .classify import Prediction, classify, imagenet_classes, iter_images, load_labels, softmax, topk
from .export import (ExportError, ExportedFiles, ExportMeta, Preprocess, export_inference, export_onnx,
                     find_exported, paddle_to_onnx)
from .predictor import (BACKENDS, DygraphPredictor, OnnxPredictor, PaddlePredictor, ParallelPredictor,
                        default_meta, load_converted_model, load_predictor, parallel, set_threads)

__all__ = ["BACKENDS", "DygraphPredictor", "ExportError", "ExportMeta", "ExportedFiles", "OnnxPredictor",
           "PaddlePredictor", "ParallelPredictor", "Prediction", "Preprocess", "classify", "default_meta",
           "export_inference", "export_onnx", "find_exported", "imagenet_classes", "iter_images",
           "load_converted_model", "load_labels", "load_predictor", "paddle_to_onnx", "parallel", "set_threads",
           "softmax", "topk"]
