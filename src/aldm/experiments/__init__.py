"""The experiments: Table 1 (:mod:`~aldm.experiments.table1`), downstream segmentation
(:mod:`~aldm.experiments.segmentation`), the demo (:mod:`~aldm.experiments.demo`), their shared config and
helpers (:mod:`~aldm.experiments.common`) and the HTML report (:mod:`~aldm.experiments.report`)."""
