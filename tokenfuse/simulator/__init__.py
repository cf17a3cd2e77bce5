"""tokenfuse.simulator"""
