"""Data formats and converters shared by the apps, the rewards and examples/data_preprocess."""
