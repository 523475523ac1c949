"""Damage to checkpoint files, for the tests that check it is caught."""
import h5py


def flip_data_byte(shard, dataset, at=100):
    """Flips one byte inside the first chunk of `dataset` in the HDF5 file
    `shard` (the data, not the metadata: Fletcher32 must catch it)."""
    with h5py.File(shard, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(shard, "r+b") as out:
        out.seek(offset + at)
        byte = out.read(1)[0]
        out.seek(offset + at)
        out.write(bytes([byte ^ 0xFF]))
