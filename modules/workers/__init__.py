"""Generation workers in other processes and on other machines, on Ray.

With ``--workers ray`` (or ``ray://HEAD:PORT``) the server stays one front door (UI, both APIs, the job queue, the
saved images) and runs txt2img, img2img and model loads on generation workers: one Ray actor per GPU (or
``--worker-count`` CPU workers), each with its own engine and model cache (:mod:`modules.workers.worker`). The
queue's dispatcher hands jobs to them through :class:`~modules.workers.ray_pool.WorkerSlot` (prefer the worker that
has the checkpoint loaded, else the least busy; pins; one retry when a worker dies). Ray is imported only here, and
only when workers are asked for: ``pip install .[cluster]``.
"""

from __future__ import annotations

WORKER_KINDS = frozenset({"txt2img", "img2img", "load-model"})  # the job kinds the workers run
