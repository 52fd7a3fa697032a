"""The Dask client that Cluster.dask() hands back is ready: its workers are counted at once."""


def test_the_client_shows_its_workers_as_soon_as_it_is_returned(local_engines):
    # notebook 05 displays the client at once; its text shows the client's cached scheduler
    # info, which distributed refreshes every 2 s and LocalCluster.wait_for_workers does not
    # touch: CI once showed "processes=0" there, with both workers connected
    client = local_engines.dask(warm_up=False)  # no TensorFlow import to wait 2 s behind
    n = len(local_engines.client.ids)
    assert f"processes={n} threads={n}," in repr(client), repr(client)
