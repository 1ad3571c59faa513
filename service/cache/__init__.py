"""The verified-key cache between the servicers and the store, kept honest by LISTEN/NOTIFY."""
