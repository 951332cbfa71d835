"""Preference pairs from a TFDS data set by name, with a tiny builder defined here."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kzoo.data.preference import read_preference_records


class KzooTinyPreferencePairs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"question": text, "good": text, "bad": text}),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"question": f"{i}+{i}=", "good": str(2 * i), "bad": "same" if i == 3
                      else str(2 * i + 1)}


def test_tfds_source_by_name_with_field_mapping(tmp_path):
    records, counts = read_preference_records(
        "tfds:kzoo_tiny_preference_pairs", data_dir=str(tmp_path),
        fields={"prompt": "question", "chosen": "good", "rejected": "bad"},
    )
    assert counts == {"read": 4, "kept": 4, "identical": 0, "empty": 0}
    got = sorted((r["prompt"], r["chosen"], r["rejected"]) for r in records)
    assert got[0] == ("0+0=", "0", "1") and got[3] == ("3+3=", "6", "same")
    assert np.all([isinstance(r["chosen"], str) for r in records])


def test_tfds_unknown_feature_lists_the_features(tmp_path):
    with pytest.raises(ValueError, match=r"no feature\(s\) \['prompt'\]; features are \['bad',"):
        read_preference_records("tfds:kzoo_tiny_preference_pairs", data_dir=str(tmp_path),
                                fields={"chosen": "good", "rejected": "bad"})


def test_unknown_tfds_name_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown TFDS data set 'kzoo_no_such_set'"):
        read_preference_records("tfds:kzoo_no_such_set")
