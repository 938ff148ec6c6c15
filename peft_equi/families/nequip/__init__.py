"""NequIP: adapters inside ``nequip-train`` configs (see :mod:`peft_equi.families.nequip.config`)."""
