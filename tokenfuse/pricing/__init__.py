"""tokenfuse.pricing"""
