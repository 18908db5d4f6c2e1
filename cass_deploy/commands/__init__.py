"""Subcommands of ``cass-deploy``; see ``cass_deploy.cli``."""
