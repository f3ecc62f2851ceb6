"""Launch the grasp generator, the object segmenter in front of it, and optionally a simulated depth camera.

    ros2 launch dvqvae_ros grasp_generator.launch.py depth_topic:=/camera/camera/depth/image_rect_raw \
        camera_info_topic:=/camera/camera/depth/camera_info           # a RealSense (see the README)
    ros2 launch dvqvae_ros grasp_generator.launch.py input:=scene_cloud scene_cloud_topic:=/points2
    ros2 launch dvqvae_ros grasp_generator.launch.py input:=segmented_cloud points_topic:=/object/points
    ros2 launch dvqvae_ros grasp_generator.launch.py use_fake_camera:=true object:=bottle
    ros2 launch dvqvae_ros grasp_generator.launch.py backend:=tensorrt device:=cuda artifact:=/path/to/engine_dir

``input`` selects what comes in: depth_image (depth image + camera info -> object_segmenter), scene_cloud
(a scene PointCloud2 -> object_segmenter) or segmented_cloud (an object cloud straight to the grasp
generator, no segmenter). Parameters come from config/grasp_generator.yaml (or params_file:=...); the
launch arguments below override the most common ones.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, NotEqualsSubstitution, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "dvqvae_ros"


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "grasp_generator.yaml"])
    params_file = LaunchConfiguration("params_file")
    points_topic = LaunchConfiguration("points_topic")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML with the parameters of both nodes"),
        DeclareLaunchArgument("model", default_value="default",
                              description="checkpoint directory, or 'default' for the bundled one"),
        DeclareLaunchArgument("hand_model", default_value="standin",
                              description="'standin' or the path of MANO_RIGHT.pkl"),
        DeclareLaunchArgument("backend", default_value="auto",
                              description="auto | eager | torchscript | onnx | tensorrt"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("artifact", default_value="",
                              description="prebuilt artifact directory from dvqvae-export (e.g. a TensorRT engine); "
                                          "empty = build or reuse one in the cache"),
        DeclareLaunchArgument("force_rebuild", default_value="false",
                              description="rebuild the cached artifact at start-up (not with artifact)"),
        DeclareLaunchArgument("input", default_value="depth_image",
                              description="depth_image | scene_cloud | segmented_cloud (no segmenter)"),
        DeclareLaunchArgument("points_topic", default_value="points",
                              description="segmented object cloud (sensor_msgs/PointCloud2) the grasp generator reads"),
        DeclareLaunchArgument("depth_topic", default_value="depth/image",
                              description="input depth_image: depth image (16UC1 mm or 32FC1 m)"),
        DeclareLaunchArgument("camera_info_topic", default_value="depth/camera_info",
                              description="input depth_image: the depth image's CameraInfo"),
        DeclareLaunchArgument("scene_cloud_topic", default_value="depth/points",
                              description="input scene_cloud: the camera's scene PointCloud2"),
        DeclareLaunchArgument("mask_topic", default_value="mask",
                              description="object mask image (used with the segmenter's use_mask: true)"),
        DeclareLaunchArgument("clicked_point_topic", default_value="/clicked_point",
                              description="RViz Publish Point (used with the segmenter's target: clicked)"),
        DeclareLaunchArgument("use_fake_camera", default_value="false",
                              description="also start fake_depth_camera publishing on points_topic"),
        DeclareLaunchArgument("object", default_value="mug",
                              description="fake camera object: mug | box | bottle | ball | mesh path"),
    ]
    grasp_generator = Node(
        package=PACKAGE,
        executable="grasp_generator",
        name="grasp_generator",
        output="screen",
        parameters=[
            params_file,
            {
                "model": LaunchConfiguration("model"),
                "hand_model": LaunchConfiguration("hand_model"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                # typed: an empty string would otherwise be read as YAML (null) and refused by launch_ros
                "artifact": ParameterValue(LaunchConfiguration("artifact"), value_type=str),
                "force_rebuild": ParameterValue(LaunchConfiguration("force_rebuild"), value_type=bool),
            },
        ],
        remappings=[("points", points_topic)],
    )
    camera_topics = [
        ("depth/image", LaunchConfiguration("depth_topic")),
        ("depth/camera_info", LaunchConfiguration("camera_info_topic")),
        ("depth/points", LaunchConfiguration("scene_cloud_topic")),
    ]
    segmenter = Node(
        package=PACKAGE,
        executable="object_segmenter",
        name="object_segmenter",
        output="screen",
        parameters=[params_file, {"input": LaunchConfiguration("input")}],
        remappings=[("points", points_topic), *camera_topics, ("mask", LaunchConfiguration("mask_topic")),
                    ("clicked_point", LaunchConfiguration("clicked_point_topic"))],
        condition=IfCondition(NotEqualsSubstitution(LaunchConfiguration("input"), "segmented_cloud")),
    )
    fake_camera = Node(
        package=PACKAGE,
        executable="fake_depth_camera",
        name="fake_depth_camera",
        output="screen",
        parameters=[params_file, {
            "object": LaunchConfiguration("object"),
            # With a segmenter in the chain the camera publishes only what a real one does.
            "publish_segmented": EqualsSubstitution(LaunchConfiguration("input"), "segmented_cloud"),
        }],
        remappings=[("points", points_topic), *camera_topics],
        condition=IfCondition(LaunchConfiguration("use_fake_camera")),
    )
    return LaunchDescription(arguments + [grasp_generator, segmenter, fake_camera])
