"""``cass-deploy tune``: the fastest deployment configuration that passes every gate (SPEC §7b)."""
