"""The data set: its on-disk format (``dataset_format``: ``DatasetWriter`` / ``DatasetReader``), the
committed compact form (``compact``), the torch datasets (``datasets.GraspDataset``) and the
``dvqvae-data`` command (``data_cli``)."""
