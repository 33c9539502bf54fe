"""The planted-answer rehearsal: the structure of a paper config, run end to end on a planted organism.

`python -m emlab.rehearsal` (make rehearsal) derives a small config from
data/configs/paper.yaml (emlab.rehearsal.derive), builds a tiny model whose
misalignment is planted along a known residual direction, writes datasets and
trait prompts that plant what each dataset is expected to do
(emlab.rehearsal.planted), serves a loopback judge that scores the planted
behaviour, runs the real workflow, and checks that the study finds what was
planted (emlab.rehearsal.checks). docs/rehearsal.md describes the organism.
"""
