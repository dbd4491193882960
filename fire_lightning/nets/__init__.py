"""The FIRE networks (FIRE §3.1–3.3), one code path for 2D and 3D, one job per module:

* :mod:`.blocks`: convolutions, instance norm, conv and ResNet blocks;
* :mod:`.synthesis`: G (encoder) and F (decoders);
* :mod:`.affine`: T_af's heads; :mod:`.cost_volume`: the matching head's cost volume;
* :mod:`.nonrigid`: T_nr's heads;
* :mod:`.transformation`: T = T_af then T_nr, one direction's :class:`~.transformation.Transform`;
* :mod:`.discriminator`: ExFIRE's D^A, D^B;
* :mod:`.fire`: :class:`~.fire.FIRENet`, all of them built from the ``model`` section;
* :mod:`.micnn`: :class:`~.micnn.MICNNNet`, the MI-CNN (``model.name: micnn``): the U-Net of
  :mod:`.nonrigid` on an affinely pre-aligned pair.
"""
