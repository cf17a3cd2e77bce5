"""tokenfuse.billing"""
