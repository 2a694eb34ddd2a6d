"""Face restoration as A1111 does it: facexlib's RetinaFace detector (read from the user's
``detection_Resnet50_Final.pth``), alignment of each face to the 512 x 512 FFHQ template, GFPGAN or CodeFormer
(identified by spandrel) on each face, and the faces pasted back with facexlib's masks (the ParseNet face-parsing
mask when ``parsing_parsenet.pth`` is there, else the feathered square).

- ``restorers``: ``FaceRestorers``, the service (finds the files, loads lazily, restores), ``FaceRestoreResult``,
  ``blend_visibility``
- ``pipeline``: ``restore_faces``, the detect, align, restore, paste loop over injected models
- ``retinaface``: the detector network and ``detect``; ``boxes``: its anchors, decoding and NMS
- ``align``: template alignment, warps, masks and paste-back; ``imageops``: OpenCV-compatible filters in torch
- ``parsenet``: the face-parsing network and its mask; ``weights``: weights-only file reading
"""
