from annotator.core.geometry import scale_grids, total_patches


def test_official_grid_is_59_patches():
    grids = scale_grids(256, (256, 128, 64), 0.5)
    assert [(g.patch_px, g.stride_px, g.n_rows) for g in grids] == [(256, 128, 1), (128, 64, 3), (64, 32, 7)]
    assert total_patches(grids) == 59


def test_patch_positions():
    g = scale_grids(256, (256, 128, 64), 0.5)
    assert g[0].boxes_xyxy() == [(0, 0, 256, 256)]
    assert g[1].boxes_xyxy()[:4] == [(0, 0, 128, 128), (64, 0, 192, 128), (128, 0, 256, 128), (0, 64, 128, 192)]
    last = g[2].boxes_xyxy()
    assert len(last) == 49 and last[-1] == (192, 192, 256, 256) and last[8] == (32, 32, 96, 96)


def test_other_geometry():
    g = scale_grids(224, (224, 112), 1.0)
    assert [g_.n_rows for g_ in g] == [1, 2]
