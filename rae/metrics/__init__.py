"""Evaluation metrics: FID, sFID, Inception Score, precision/recall (ADM's suite) and rFID, in PyTorch."""
from rae.metrics.classifier import EmbeddedClassifier, class_scores, classifier_frechet, judge
from rae.metrics.evaluate import Reference, evaluate_npz, load_reference, reconstruction_fid, sample_metrics
from rae.metrics.features import FeatureExtractor, InceptionFeatures, extract_features, iterate_npz_images
from rae.metrics.frechet import GaussianStats, frechet_distance
from rae.metrics.inception import InceptionV3
from rae.metrics.inception_score import inception_score
from rae.metrics.precision_recall import precision_recall

__all__ = [
    "EmbeddedClassifier", "class_scores", "classifier_frechet", "judge",
    "FeatureExtractor", "GaussianStats", "InceptionFeatures", "InceptionV3", "Reference",
    "evaluate_npz", "extract_features", "frechet_distance", "inception_score", "iterate_npz_images",
    "load_reference", "precision_recall", "reconstruction_fid", "sample_metrics",
]
