"""Metric functions over labelled arrays.

Conventions (all modules): ``samples`` has dims ``(member, time, <y>, <x>)``, ``obs`` has
``(time, <y>, <x>)`` and the optional ``mask`` is boolean on ``(<y>, <x>)`` (True = valid pixel).
Spatial dims are ``lat``/``lon`` or ``y``/``x``. Every function returns an ``xr.DataArray``
(reduced to a scalar or to a few named dims such as ``scale``, ``threshold`` or ``bin``) and works
on dask-backed inputs lazily; call ``.compute()`` (or ``dask.compute`` on many) to evaluate.
"""
