"""The tuner: :class:`~peft_equi.tuner.model.PeftModel` and what it is made of.

* :mod:`~peft_equi.tuner.model` -- ``PeftModel`` (Hugging Face peft's API, saving and loading),
  ``get_peft_model``, ``inject_adapter_in_model``;
* :mod:`~peft_equi.tuner.named_adapters` / :mod:`~peft_equi.tuner.merging` -- its named adapters
  and its merging;
* :mod:`~peft_equi.tuner.state` -- ``TunerState``, what it keeps beside its modules;
* :mod:`~peft_equi.tuner.state_dict` -- the adapter state-dict keys, ``get_peft_model_state_dict``
  and ``set_peft_model_state_dict``;
* :mod:`~peft_equi.tuner.save_and_load` -- the files of a saved adapter.
"""
