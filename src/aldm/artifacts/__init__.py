"""The artifacts: one class per thing aldm writes to disk, the one place that knows its files and schema.

* :class:`~aldm.artifacts.cache.PreparedCache` — ``aldm data prepare``'s cache (manifest, npz per subject,
  its modalities);
* :class:`~aldm.artifacts.run.Run` — a training run (run.json, config.json, checkpoints, weights, split);
* :class:`~aldm.artifacts.segmenter.SegmenterRun` — a trained tumour segmenter, a kind of run;
* :class:`~aldm.artifacts.samples.SampleSet` — ``aldm generate``'s output (sample folders, sample.json with
  :class:`~aldm.artifacts.samples.SampleRecord`, samples.csv);
* :mod:`~aldm.artifacts.split` — a split file.

Every "is this a ..." check, file name and schema lives in its class; :mod:`aldm.io` keeps the byte-level
helpers (atomic writes, NIfTI, torch files, locks) they use.
"""
