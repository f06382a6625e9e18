"""The CPU's algo="auto" rule: a decision tree per conv op over the layer's
geometry (fastconv.implementations.conv2d.FEATURES), fitted by benchmarks/fit_dispatch.py; do not
edit it by hand, rerun that.

Fitted on dispatch-cpu.csv: 2072 timings of AMD EPYC (family 26 model 2) (avx512).
Geomean slowdown against the fastest algorithm of each measured layer (1.000x: always the
fastest), of this rule and of each algorithm alone:
    conv2d: the rule 1.034x, blocked 1.366x, depthwise (some layers only), direct 4.374x, im2col
        1.741x, winograd (some layers only)
    conv2d_backward_input: the rule 1.019x, blocked 1.676x, depthwise (some layers only), direct
        4.682x, im2col 1.559x, winograd (some layers only)
    conv2d_backward_weight: the rule 1.010x, blocked 1.397x, depthwise (some layers only),
        direct 21.035x, im2col 1.528x
"""

RULE = {'conv2d': {'feature': 'window',
            'threshold': 9,
            'below': {'feature': 'stride',
                      'threshold': 4,
                      'below': 'im2col',
                      'at_least': {'feature': 'threads',
                                   'threshold': 2,
                                   'below': 'im2col',
                                   'at_least': 'blocked'}},
            'at_least': {'feature': 'channels',
                         'threshold': 16,
                         'below': {'feature': 'taps',
                                   'threshold': 25,
                                   'below': ['depthwise', 'direct'],
                                   'at_least': 'direct'},
                         'at_least': {'feature': 'pixels',
                                      'threshold': 49,
                                      'below': 'im2col',
                                      'at_least': 'blocked'}}},
 'conv2d_backward_input': {'feature': 'in_channels',
                           'threshold': 16,
                           'below': {'feature': 'taps',
                                     'threshold': 25,
                                     'below': {'feature': 'channels',
                                               'threshold': 16,
                                               'below': ['depthwise', 'direct'],
                                               'at_least': 'im2col'},
                                     'at_least': {'feature': 'taps',
                                                  'threshold': 150,
                                                  'below': 'im2col',
                                                  'at_least': 'direct'}},
                           'at_least': {'feature': 'window',
                                        'threshold': 9,
                                        'below': {'feature': 'in_channels',
                                                  'threshold': 2048,
                                                  'below': 'im2col',
                                                  'at_least': 'blocked'},
                                        'at_least': {'feature': 'pixels',
                                                     'threshold': 16,
                                                     'below': 'im2col',
                                                     'at_least': 'blocked'}}},
 'conv2d_backward_weight': {'feature': 'channels',
                            'threshold': 144,
                            'below': {'feature': 'taps',
                                      'threshold': 27,
                                      'below': {'feature': 'channels',
                                                'threshold': 6,
                                                'below': ['depthwise', 'direct'],
                                                'at_least': 'im2col'},
                                      'at_least': {'feature': 'pixels',
                                                   'threshold': 64,
                                                   'below': 'im2col',
                                                   'at_least': 'blocked'}},
                            'at_least': {'feature': 'pixels',
                                         'threshold': 784,
                                         'below': {'feature': 'channels',
                                                   'threshold': 320,
                                                   'below': 'blocked',
                                                   'at_least': 'im2col'},
                                         'at_least': {'feature': 'window',
                                                      'threshold': 4,
                                                      'below': 'im2col',
                                                      'at_least': 'blocked'}}}}
