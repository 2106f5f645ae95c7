"""Backbone -> head -> classifier, composed by :class:`ssaseg.models.segmentor.Segmentor`."""
