"""tokenfuse.gateway"""
